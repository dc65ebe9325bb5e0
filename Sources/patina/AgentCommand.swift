import ArgumentParser
import Foundation
import Logging
import PatinaNode

/// `patina agent --config FILE`: runs one node until SIGTERM or SIGINT.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agent", abstract: "Run a node.")

    @Option(help: "Path of the node's TOML config.") var config: String

    func run() async throws {
        let nodeConfig: NodeConfig
        do { nodeConfig = try NodeConfig.load(path: config) } catch { fail("\(error)") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = Logger.Level(rawValue: nodeConfig.logLevel) ?? .info
            return handler
        }
        var logger = Logger(label: "patina")
        logger.logLevel = Logger.Level(rawValue: nodeConfig.logLevel) ?? .info
        do {
            try await Agent(config: nodeConfig, logger: logger).run()
        } catch let error as StartupError {
            fail(error.message)
        } catch {
            fail("agent stopped: \(error)")
        }
    }
}

/// Prints one line to stderr and exits non-zero.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("patina: \(message)\n".utf8))
    exit(1)
}
