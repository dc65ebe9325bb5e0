import Foundation
import Metrics
import PatinaCore
import Synchronization

/// Propagation lag: local apply time minus the origin's commit time (the HLC
/// timestamp every changeset carries), for each remote version applied here.
/// Exported as a Prometheus histogram and summarized as `p99_lag` in
/// `/v1/health` (over the last 1024 versions). Clocks of different hosts
/// differ, so on a real fleet this is only as good as their NTP sync.
public final class LagTracker: Sendable {
    private let samples = Mutex<(values: [Double], next: Int)>(([], 0))
    private let capacity = 1024
    private let timer = Timer(label: "patina_propagation_lag_seconds", preferredDisplayUnit: .seconds)

    public init() {}

    public func record(originTimestamps: [HybridTimestamp], nowMilliseconds: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000)) {
        guard !originTimestamps.isEmpty else { return }
        let lags = originTimestamps.map { Double(nowMilliseconds > $0.milliseconds ? nowMilliseconds - $0.milliseconds : 0) / 1000 }
        for lag in lags { timer.recordNanoseconds(Int64(lag * 1e9)) }
        samples.withLock { state in
            for lag in lags {
                if state.values.count < capacity {
                    state.values.append(lag)
                } else {
                    state.values[state.next] = lag
                }
                state.next = (state.next + 1) % capacity
            }
        }
    }

    /// The 99th percentile of recent lags, in seconds (0 before any remote change).
    public var p99: Double {
        let values = samples.withLock { $0.values }.sorted()
        guard !values.isEmpty else { return 0 }
        return values[min(values.count - 1, Int(Double(values.count) * 0.99))]
    }
}
