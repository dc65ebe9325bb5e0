import PatinaCore
import Synchronization
import Testing

/// The batching hand-off between a producer thread and one reading task.
@Suite struct ChunkInboxTests {
    @Test func chunksQueuedWhileNobodyReadsComeAsOneBatchInOrder() async {
        let inbox = ChunkInbox(capacity: 10, overflow: .dropOldest)
        for i in 0..<5 { #expect(inbox.append([UInt8(i)]) == .queued(readerWaiting: false)) }
        #expect(await inbox.next() == [[0], [1], [2], [3], [4]])
        inbox.finish()
        #expect(await inbox.next() == nil)
    }

    @Test func aWaitingReaderIsWokenOnceWithEverythingAppendedBeforeTheWake() async throws {
        let inbox = ChunkInbox(capacity: 10, overflow: .dropOldest)
        let reader = Task { await inbox.next() }
        let deadline = ContinuousClock.now + .seconds(10)
        while !inbox.hasWaitingReader {
            try #require(ContinuousClock.now < deadline, "the reader never started waiting")
            try await Task.sleep(for: .milliseconds(1))
        }
        #expect(inbox.append([1]) == .queued(readerWaiting: true))
        #expect(inbox.append([2]) == .queued(readerWaiting: true))
        inbox.wakeReader()
        #expect(await reader.value == [[1], [2]])
    }

    @Test func dropOldestKeepsTheNewestAndCountsTheDropped() async {
        let inbox = ChunkInbox(capacity: 3, overflow: .dropOldest)
        for i in 0..<5 { _ = inbox.append([UInt8(i)]) }
        #expect(inbox.droppedCount == 2)
        #expect(await inbox.next() == [[2], [3], [4]])
    }

    @Test func finishOnOverflowRefusesAndTheReaderGetsWhatWasQueuedThenTheEnd() async {
        let inbox = ChunkInbox(capacity: 2, overflow: .finish)
        #expect(inbox.append([1]) == .queued(readerWaiting: false))
        #expect(inbox.append([2]) == .queued(readerWaiting: false))
        #expect(inbox.append([3]) == .refused)
        #expect(inbox.append([4]) == .refused, "finished for good")
        #expect(inbox.overflowed)
        #expect(await inbox.next() == [[1], [2]])
        #expect(await inbox.next() == nil)
    }

    @Test func finishWakesAWaitingReaderWithNil() async throws {
        let inbox = ChunkInbox(capacity: 4, overflow: .finish)
        let reader = Task { await inbox.next() }
        try await Task.sleep(for: .milliseconds(20))  // the reader may or may not wait yet: both must end
        inbox.finish()
        #expect(await reader.value == nil)
        #expect(!inbox.overflowed)
    }

    @Test func cancellingTheReaderEndsItsWait() async {
        let inbox = ChunkInbox(capacity: 4, overflow: .dropOldest)
        let reader = Task { await inbox.next() }
        reader.cancel()
        #expect(await reader.value == nil)
        // The inbox still works for the next reader.
        _ = inbox.append([7])
        #expect(await inbox.next() == [[7]])
    }
}

@Suite struct ChunkInboxByteBudgetTests {
    @Test func dropOldestAlsoKeepsWithinTheByteBudget() async {
        let inbox = ChunkInbox(capacity: 100, maxBytes: 10, overflow: .dropOldest)
        for i in 0..<4 { _ = inbox.append([UInt8](repeating: UInt8(i), count: 4)) }
        // 16 bytes offered, 10 allowed: the two oldest went.
        #expect(inbox.droppedCount == 2)
        #expect(await inbox.next() == [[2, 2, 2, 2], [3, 3, 3, 3]])
    }

    @Test func oneChunkLargerThanTheBudgetStillGoesAlone() async {
        let inbox = ChunkInbox(capacity: 100, maxBytes: 10, overflow: .finish)
        #expect(inbox.append([UInt8](repeating: 1, count: 50)) == .queued(readerWaiting: false))
        #expect(inbox.append([2]) == .refused, "over the budget: finished")
        #expect(inbox.overflowed)
        #expect(await inbox.next()?.map(\.count) == [50])
        #expect(await inbox.next() == nil)
    }

    @Test func theBudgetFreesWhenTheReaderTakesTheChunks() async {
        let inbox = ChunkInbox(capacity: 100, maxBytes: 10, overflow: .finish)
        #expect(inbox.append([UInt8](repeating: 1, count: 8)) == .queued(readerWaiting: false))
        _ = await inbox.next()
        #expect(inbox.append([UInt8](repeating: 2, count: 8)) == .queued(readerWaiting: false), "room again")
    }
}
