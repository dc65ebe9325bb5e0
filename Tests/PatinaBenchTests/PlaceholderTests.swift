import Testing
@testable import PatinaBench
