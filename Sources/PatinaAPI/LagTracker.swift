import Foundation
import Metrics
import PatinaCore
import PatinaStore
import Synchronization

/// Propagation lag: local apply time minus the origin's commit time (the HLC
/// timestamp every changeset carries), for each remote version applied here.
///
/// Exported as the Prometheus histogram `patina_propagation_lag_seconds`,
/// labelled `origin_region` (the region the origin actor gossips; "unknown"
/// until membership has heard of it), so a deployment shows its cross-region
/// latency continuously. `/v1/health`'s `p99_lag` is the 99th percentile of the
/// last 1024 lags, all regions together. Clocks of different hosts differ, so on
/// a real fleet this is only as good as their NTP sync.
public final class LagTracker: Sendable {
    private struct State {
        var values: [Double] = []
        var next = 0
        var timers: [String: Timer] = [:]
    }

    private let state = Mutex(State())
    private let capacity = 1024
    /// Region labels kept apart at most; beyond, lags are labelled "other" so a
    /// misconfigured fleet cannot grow the metric without bound.
    private let maxRegions = 64
    private let regionOf: @Sendable (ActorID) -> String?

    /// - Parameter regionOf: the region of an actor, if known (read under the
    ///   store's commit listener: it must be quick and must not block).
    public init(regionOf: @escaping @Sendable (ActorID) -> String? = { _ in nil }) {
        self.regionOf = regionOf
    }

    public func record(_ origins: [RemoteOrigin], nowMilliseconds: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000)) {
        guard !origins.isEmpty else { return }
        let samples = origins.map { origin -> (region: String, seconds: Double) in
            let ms = origin.timestamp.milliseconds
            return (regionOf(origin.actor) ?? "unknown", Double(nowMilliseconds > ms ? nowMilliseconds - ms : 0) / 1000)
        }
        let timers = state.withLock { s -> [Timer] in
            samples.map { sample in
                var label = sample.region
                if s.timers[label] == nil && s.timers.count >= maxRegions { label = "other" }
                if let t = s.timers[label] { return t }
                let t = Timer(label: "patina_propagation_lag_seconds", dimensions: [("origin_region", label)],
                              preferredDisplayUnit: .seconds)
                s.timers[label] = t
                return t
            }
        }
        for (timer, sample) in zip(timers, samples) { timer.recordNanoseconds(Int64(sample.seconds * 1e9)) }
        state.withLock { s in
            for sample in samples {
                if s.values.count < capacity {
                    s.values.append(sample.seconds)
                } else {
                    s.values[s.next] = sample.seconds
                }
                s.next = (s.next + 1) % capacity
            }
        }
    }

    /// The 99th percentile of recent lags, in seconds (0 before any remote change).
    public var p99: Double {
        let values = state.withLock { $0.values }.sorted()
        guard !values.isEmpty else { return 0 }
        return values[min(values.count - 1, Int(Double(values.count) * 0.99))]
    }
}
