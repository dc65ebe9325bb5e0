import Foundation
import PatinaCore
import PatinaStore

/// Any JSON value, as clients send them.
enum JSONValue: Decodable, Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// A statement parameter. Arrays of bytes are blobs (as Corrosion sends them).
    func sqlValue() throws(APIError) -> SQLValue {
        switch self {
        case .null: return .null
        case .bool(let b): return .integer(b ? 1 : 0)
        case .int(let i): return .integer(i)
        case .double(let d): return .real(d)
        case .string(let s): return .text(s)
        case .array(let items):
            var bytes: [UInt8] = []
            for item in items {
                guard case .int(let i) = item, (0...255).contains(i) else {
                    throw APIError(.badRequest, "an array parameter must be a blob: bytes 0...255")
                }
                bytes.append(UInt8(i))
            }
            return .blob(bytes)
        case .object:
            throw APIError(.badRequest, "an object is not a valid parameter value")
        }
    }
}

/// Writes JSON by hand on the hot paths (rows, events): no intermediate objects.
enum JSONWriter {
    static func append(_ value: SQLValue, to out: inout String) {
        switch value {
        case .null: out += "null"
        case .integer(let i): out += String(i)
        case .real(let d):
            if d.isFinite {
                // Keep a decimal point so clients read it back as a real.
                let s = String(d)
                out += s.contains(".") || s.contains("e") ? s : s + ".0"
            } else {
                out += "null"
            }
        case .text(let s): appendString(s, to: &out)
        case .blob(let b):
            out += "["
            for (i, byte) in b.enumerated() {
                if i > 0 { out += "," }
                out += String(byte)
            }
            out += "]"
        }
    }

    static func append(_ values: [SQLValue], to out: inout String) {
        out += "["
        for (i, v) in values.enumerated() {
            if i > 0 { out += "," }
            append(v, to: &out)
        }
        out += "]"
    }

    static func appendString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20:
                out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    static func string(_ s: String) -> String {
        var out = ""
        appendString(s, to: &out)
        return out
    }

    static func seconds(_ d: Duration) -> String {
        let (s, atto) = d.components
        return String(format: "%.9f", Double(s) + Double(atto) / 1e18)
    }
}

/// One statement of a request, in any of the forms Corrosion accepts.
struct UserStatement: Sendable {
    var sql: String
    var parameters: StatementParameters

    /// Parses `"SQL"`, `["SQL", [params]]`, `["SQL", {named}]` or
    /// `{"query": "SQL", "params": [...], "named_params": {...}}`.
    init(json: JSONValue) throws(APIError) {
        switch json {
        case .string(let sql):
            self.sql = sql
            parameters = .none
        case .array(let parts):
            guard parts.count == 2 || parts.count == 1, case .string(let sql) = parts[0] else {
                throw APIError(.badRequest, "a statement array must be [sql, params]")
            }
            self.sql = sql
            parameters = parts.count == 2 ? try Self.parameters(parts[1]) : .none
        case .object(let fields):
            guard case .string(let sql)? = fields["query"] else {
                throw APIError(.badRequest, "a statement object needs a \"query\" string")
            }
            for key in fields.keys where !["query", "params", "named_params"].contains(key) {
                throw APIError(.badRequest, "unknown statement field \"\(key)\"")
            }
            self.sql = sql
            if let named = fields["named_params"], named != .null {
                parameters = try Self.parameters(named)
            } else if let params = fields["params"], params != .null {
                parameters = try Self.parameters(params)
            } else {
                parameters = .none
            }
        default:
            throw APIError(.badRequest, "a statement must be a string, an array or an object")
        }
    }

    private static func parameters(_ json: JSONValue) throws(APIError) -> StatementParameters {
        switch json {
        case .array(let items):
            var values: [SQLValue] = []
            for item in items { values.append(try item.sqlValue()) }
            return .positional(values)
        case .object(let fields):
            var values: [String: SQLValue] = [:]
            for (k, v) in fields { values[k] = try v.sqlValue() }
            return .named(values)
        case .null:
            return .none
        default:
            throw APIError(.badRequest, "parameters must be an array or an object")
        }
    }

    static func parseList(_ body: Data) throws(APIError) -> [UserStatement] {
        let json: JSONValue
        do { json = try JSONDecoder().decode(JSONValue.self, from: body) } catch {
            throw APIError(.badRequest, "invalid JSON: \(error.localizedDescription)")
        }
        guard case .array(let items) = json else {
            throw APIError(.badRequest, "the body must be a JSON array of statements")
        }
        var statements: [UserStatement] = []
        for item in items { statements.append(try UserStatement(json: item)) }
        return statements
    }

    static func parseOne(_ body: Data) throws(APIError) -> UserStatement {
        let json: JSONValue
        do { json = try JSONDecoder().decode(JSONValue.self, from: body) } catch {
            throw APIError(.badRequest, "invalid JSON: \(error.localizedDescription)")
        }
        return try UserStatement(json: json)
    }
}

