import Metrics

/// The cluster's own counts on the metrics endpoint, next to the API's: what
/// broadcast sends and drops, what the apply queue merges and refuses, what
/// anti-entropy sync pulls and serves, how many members are in each state.
/// The shells keep cumulative counts (the pure state machines own them); every
/// `rttInterval` the node hands a snapshot here, and the counters grow by what
/// changed since the last one.
struct ClusterMetrics {
    private var previous: [String: Int] = [:]
    private var counters: [String: Counter] = [:]
    private let applyDepth = Gauge(label: "patina_apply_queue_depth")
    private let members: [MemberStatus: Gauge] = Dictionary(uniqueKeysWithValues: [MemberStatus.alive, .suspect, .down].map {
        ($0, Gauge(label: "patina_members", dimensions: [("state", "\($0)")]))
    })

    mutating func export(broadcast b: BroadcastMetrics, apply a: ApplyQueue.Stats, sync s: SyncStats, applyQueueDepth: Int,
                         memberStates: [MemberStatus]) {
        count("patina_broadcast_changesets_total", ("kind", "local"), b.localChangesets)
        count("patina_broadcast_changesets_total", ("kind", "received"), b.receivedChangesets)
        count("patina_broadcast_changesets_total", ("kind", "duplicate"), b.duplicates)
        count("patina_broadcast_sends_total", nil, b.sends)
        count("patina_broadcast_changesets_sent_total", nil, b.changesetsSent)
        count("patina_broadcast_retransmissions_total", nil, b.retransmissions)
        count("patina_broadcast_send_failures_total", nil, b.sendFailures)
        count("patina_broadcast_dropped_total", ("from", "peer_queue"), b.droppedQueued)
        count("patina_broadcast_dropped_total", ("from", "retransmission_set"), b.droppedPending)
        count("patina_apply_changesets_total", nil, a.mergedChangesets)
        count("patina_apply_batches_total", nil, a.batches)
        count("patina_apply_refused_total", nil, a.refused)
        count("patina_apply_rejections_total", nil, a.rejections)
        count("patina_apply_errors_total", nil, a.mergeErrors)
        count("patina_sync_rounds_total", nil, s.rounds)
        count("patina_sync_sessions_total", ("result", "pulled"), s.pulledOK)
        count("patina_sync_sessions_total", ("result", "pull_failed"), s.pulledFailed)
        count("patina_sync_sessions_total", ("result", "served"), s.servedOK)
        count("patina_sync_sessions_total", ("result", "served_busy"), s.servedBusy)
        count("patina_sync_sessions_total", ("result", "serve_failed"), s.servedFailed)
        count("patina_sync_changesets_total", ("direction", "pulled"), s.changesetsPulled)
        count("patina_sync_changesets_total", ("direction", "served"), s.changesetsServed)
        count("patina_sync_changesets_held_back_total", nil, s.changesetsHeldBack)
        count("patina_sync_changes_pulled_total", nil, s.changesPulled)
        applyDepth.record(applyQueueDepth)
        for (state, gauge) in members { gauge.record(memberStates.filter { $0 == state }.count) }
    }

    /// Grows the counter `label{dimension}` to `total` (a shell's cumulative count).
    private mutating func count(_ label: String, _ dimension: (String, String)?, _ total: Int) {
        let key = dimension.map { "\(label){\($0.0)=\($0.1)}" } ?? label
        let delta = total - previous[key, default: 0]
        previous[key] = total
        guard delta > 0 else { return }
        if counters[key] == nil { counters[key] = Counter(label: label, dimensions: dimension.map { [$0] } ?? []) }
        counters[key]!.increment(by: delta)
    }
}
