import Foundation
import Hummingbird
import PatinaStore

/// An error that knows its HTTP status and renders itself as `{"error": "..."}`.
public struct APIError: Error, HTTPResponseError, CustomStringConvertible, Sendable {
    public let status: HTTPResponse.Status
    public let message: String

    init(_ status: HTTPResponse.Status, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(string: "{\"error\":\(JSONWriter.string(message))}\n")))
    }

    /// The status that fits an error from running SQL.
    static func status(for error: any Error) -> HTTPResponse.Status {
        switch error {
        case is StatementNotAllowed: return .forbidden
        case is StatementTimeout: return .gatewayTimeout
        case let e as SQLiteError:
            if e.isBusy { return .serviceUnavailable }
            if e.isInterrupt { return .gatewayTimeout }
            switch e.primaryCode {
            case 19: return .conflict  // SQLITE_CONSTRAINT
            case 1, 20, 25: return .badRequest  // SQLITE_ERROR, MISMATCH, RANGE
            default: return .internalServerError
            }
        case let e as APIError: return e.status
        default: return .internalServerError
        }
    }

    /// The message for a client: SQLite's own words, without internals.
    static func message(for error: any Error) -> String {
        switch error {
        case let e as SQLiteError: return e.isInterrupt ? StatementTimeout().description : e.message
        default: return "\(error)"
        }
    }
}
