import PatinaCore

/// The SQL that turns a plain table into a replicated one: its clock table and
/// the triggers that record every local write there.
///
/// Clock table `T__patina_clock`: one row per (packed pk, column) holding the
/// cell's `col_version` and the actor (`site`, an ordinal into
/// `__patina_sites`), `db_version` and `seq` of the write that set it; plus the
/// sentinel row (`cid = '-1'`) whose `col_version` is the row's causal length,
/// omitted while that length is 1 in a table with non-key columns (a row with
/// column clocks and no sentinel is alive in its first life).
/// A sentinel with `site = -1` was implied by a column change that arrived
/// before its row's own sentinel; any real sentinel of equal length replaces it.
enum ReplicatedTableDDL {
    static func clockTable(_ t: TableInfo) -> String {
        let clock = quoteIdentifier(t.clockTable)
        return """
            CREATE TABLE IF NOT EXISTS \(clock) (
                pk BLOB NOT NULL,
                cid TEXT NOT NULL,
                col_version INTEGER NOT NULL,
                db_version INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                site INTEGER NOT NULL,
                PRIMARY KEY (pk, cid)
            ) WITHOUT ROWID;
            """
    }

    static func sqlLiteral(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }

    static func triggerNames(_ t: TableInfo) -> [String] {
        ["ins", "upd", "updpk", "del"].map { t.name + "__patina_" + $0 }
    }

    static func dropTriggers(_ t: TableInfo) -> String {
        triggerNames(t).map { "DROP TRIGGER IF EXISTS \(quoteIdentifier($0));" }.joined(separator: "\n")
    }

    static func triggers(_ t: TableInfo) -> String {
        let table = quoteIdentifier(t.name)
        let clock = quoteIdentifier(t.clockTable)
        let names = triggerNames(t).map(quoteIdentifier)
        func pack(_ row: String) -> String {
            "patina_pack(" + t.pkColumns.map { "\(row).\(quoteIdentifier($0))" }.joined(separator: ", ") + ")"
        }
        let pkChanged = t.pkColumns.map { "OLD.\(quoteIdentifier($0)) IS NOT NEW.\(quoteIdentifier($0))" }
            .joined(separator: " OR ")
        let insertCols = "(pk, cid, col_version, db_version, seq, site)"
        let stamp = "db_version = excluded.db_version, seq = excluded.seq, site = 0"

        let tableLiteral = sqlLiteral(t.name)
        let pkOnly = t.columns.isEmpty

        // Sentinel for a created row. A row's first life (cl 1) has no sentinel
        // when the table has non-key columns (its column clocks say it exists),
        // as in cr-sqlite; a deleted (even) key → next odd. A table of key
        // columns only always keeps a sentinel (nothing else would mark the row).
        // An insert that meets an existing clock row is not a plain new row:
        // patina_slow() makes the commit read its changes back.
        func created(_ row: String, captured: Bool) -> String {
            if pkOnly {
                let seq = captured ? "patina_cell(\(tableLiteral), '-1', NULL, \(pack(row)))" : "patina_seq(\(tableLiteral), \(pack(row)))"
                return """
                    INSERT INTO \(clock) \(insertCols) VALUES (\(pack(row)), '-1', 1, patina_version(), \(seq), 0)
                      ON CONFLICT (pk, cid) DO UPDATE SET col_version = col_version + 1, \(stamp)
                      WHERE patina_slow() = 0 AND col_version % 2 = 0;
                    """
            }
            return """
                UPDATE \(clock) SET col_version = col_version + 1 + patina_slow(), db_version = patina_version(),
                  seq = patina_seq(\(tableLiteral), \(pack(row))), site = 0
                  WHERE pk = \(pack(row)) AND cid = '-1' AND col_version % 2 = 0;
                """
        }
        // Sentinel for a deleted row: next even; its column clocks go, so a later
        // re-insert starts them over (the higher causal length wins anyway).
        func deleted(_ row: String) -> String {
            """
            INSERT INTO \(clock) \(insertCols) VALUES (\(pack(row)), '-1', 2, patina_version(), patina_seq(\(tableLiteral), \(pack(row))), 0)
              ON CONFLICT (pk, cid) DO UPDATE SET col_version = col_version + 1, \(stamp)
              WHERE col_version % 2 = 1;
            DELETE FROM \(clock) WHERE pk = \(pack(row)) AND cid != '-1';
            """
        }
        // A written cell: col_version 1 for a new clock, else one more.
        func cell(_ column: String, _ row: String, when condition: String?) -> String {
            let whereClause = condition.map { "WHERE \($0)" } ?? "WHERE true"
            return """
                INSERT INTO \(clock) \(insertCols)
                  SELECT \(pack(row)), \(sqlLiteral(column)), 1, patina_version(), patina_seq(\(tableLiteral), \(pack(row))), 0 \(whereClause)
                  ON CONFLICT (pk, cid) DO UPDATE SET col_version = col_version + 1, \(stamp);
                """
        }
        // A cell of a newly inserted row, handed to the store as well (patina_cell);
        // an existing clock means it was not new after all (patina_slow).
        func insertedCell(_ column: String) -> String {
            """
            INSERT INTO \(clock) \(insertCols)
              VALUES (\(pack("NEW")), \(sqlLiteral(column)), 1, patina_version(),
                patina_cell(\(tableLiteral), \(sqlLiteral(column)), NEW.\(quoteIdentifier(column)), \(pack("NEW"))), 0)
              ON CONFLICT (pk, cid) DO UPDATE SET col_version = col_version + 1 + patina_slow(), \(stamp);
            """
        }
        let allCells = t.columns.map { cell($0, "NEW", when: nil) }.joined(separator: "\n")
        let insertedCells = t.columns.map(insertedCell).joined(separator: "\n")
        let changedCells = t.columns.map {
            cell($0, "NEW", when: "OLD.\(quoteIdentifier($0)) IS NOT NEW.\(quoteIdentifier($0))")
        }.joined(separator: "\n")
        let slow = "SELECT patina_slow();"

        var sql = """
            CREATE TRIGGER \(names[0]) AFTER INSERT ON \(table) WHEN patina_capturing() BEGIN
            \(created("NEW", captured: true))
            \(insertedCells)
            END;
            CREATE TRIGGER \(names[3]) AFTER DELETE ON \(table) WHEN patina_capturing() BEGIN
            \(slow)
            \(deleted("OLD"))
            END;
            CREATE TRIGGER \(names[2]) AFTER UPDATE ON \(table) WHEN patina_capturing() AND (\(pkChanged)) BEGIN
            \(slow)
            \(deleted("OLD"))
            \(created("NEW", captured: false))
            \(allCells)
            END;
            """
        if !t.columns.isEmpty {
            sql += """

                CREATE TRIGGER \(names[1]) AFTER UPDATE ON \(table) WHEN patina_capturing() AND NOT (\(pkChanged)) BEGIN
                \(slow)
                \(changedCells)
                END;
                """
        }
        return sql
    }
}
