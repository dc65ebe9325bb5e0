import PatinaCore

/// DATAGRAM frames from the peer in batches: each element is every datagram that arrived
/// since the previous one was taken, oldest first (see `QUICConnection.incomingDatagramBatches`).
public struct QUICDatagramBatches: AsyncSequence, Sendable {
    public typealias Element = [[UInt8]]
    let inbox: ChunkInbox

    public struct AsyncIterator: AsyncIteratorProtocol {
        let inbox: ChunkInbox
        public mutating func next() async -> [[UInt8]]? { await inbox.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(inbox: inbox) }
}

/// DATAGRAM frames from the peer one at a time (the batches of ``QUICDatagramBatches``, flattened).
public struct QUICDatagrams: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    let inbox: ChunkInbox

    public struct AsyncIterator: AsyncIteratorProtocol {
        let inbox: ChunkInbox
        var batch: [[UInt8]] = []
        var index = 0

        public mutating func next() async -> [UInt8]? {
            while index == batch.count {
                guard let more = await inbox.next() else { return nil }
                batch = more
                index = 0
            }
            defer { index += 1 }
            return batch[index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(inbox: inbox) }
}
