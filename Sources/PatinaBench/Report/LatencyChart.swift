import Foundation

extension LatencyReport {
    /// A plain SVG 1.1 chart of the report: small multiples, one latency CDF panel per destination region with one
    /// step curve per origin region and that pair's floor as a dashed line of the same colour, then a panel for
    /// "visible everywhere" with the largest one-way delay marked. Panels share one x scale so they compare.
    ///
    /// Curves count missing deliveries in the denominator, so a curve that stays below 1 shows them. Each curve
    /// keeps at most `LatencyChart.maximumPointsPerCurve` points, so 100k samples still make a small file.
    public func svg() -> String { LatencyChart(report: self).render() }
}

/// Layout and drawing for `LatencyReport.svg()`. Elements carry classes (`panel`, `cdf`, `floor`,
/// `max-one-way`) and `<title>` tooltips naming their pair, which viewers show on hover and tests read.
struct LatencyChart {
    static let maximumPointsPerCurve = 500
    /// Okabe–Ito's colour-blind-safe set without yellow and black, then a few more that stay legible on white.
    static let palette = [
        "#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#8c564b", "#9467bd", "#7f7f7f", "#bcbd22",
    ]
    static let everywhereColour = "#222222"

    static let margin = 16.0
    static let plotLeft = 52.0, plotTop = 26.0, plotWidth = 300.0, plotHeight = 180.0
    static let panelWidth = plotLeft + plotWidth + 20, panelHeight = plotTop + plotHeight + 42
    static let columns = 3
    /// Rough width of one character of the 11 px sans-serif body text, for wrapping the legend.
    static let characterWidth = 6.2

    let report: LatencyReport
    let origins: [String]
    let destinations: [String]
    let xUpper: Double
    let xStep: Double

    init(report: LatencyReport) {
        self.report = report
        origins = Array(Set(report.pairs.map(\.from))).sorted()
        destinations = Array(Set(report.pairs.map(\.to))).sorted()
        let largest = (report.pairs.flatMap { [$0.latency.observed.last, $0.floorMilliseconds] }
            + [report.everywhere.observed.last, report.maxOneWayMilliseconds]).compactMap { $0 }.max() ?? 0
        (xUpper, xStep) = Self.axis(covering: largest * 1.05)
    }

    /// A round upper bound and tick step, about five ticks, steps of 1, 2, 2.5 or 5 times a power of ten.
    static func axis(covering value: Double) -> (upper: Double, step: Double) {
        guard value > 0, value.isFinite else { return (1, 0.25) }
        let rough = value / 5
        let magnitude = pow(10, (log10(rough)).rounded(.down))
        let step = [1, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= rough } ?? 10 * magnitude
        return ((value / step).rounded(.up) * step, step)
    }

    /// The CDF as (latency, fraction of expected deliveries) at evenly spaced ranks, ending at the largest
    /// observation. Drawn as steps, it lies below the exact curve by less than 1/`maximumSteps`.
    static func cdfPoints(_ distribution: LatencyReport.Distribution, maximumSteps: Int) -> [(x: Double, y: Double)] {
        let count = distribution.count
        let steps = min(count, maximumSteps)
        guard steps > 0 else { return [] }
        let expected = Double(distribution.expected)
        return (1...steps).map { step in
            let rank = (step * count + steps - 1) / steps
            return (distribution.observed[rank - 1], Double(rank) / expected)
        }
    }

    func render() -> String {
        let panelCount = destinations.count + 1
        let columns = min(Self.columns, panelCount)
        let rows = (panelCount + columns - 1) / columns
        let width = max(720, Double(columns) * Self.panelWidth + 2 * Self.margin)
        let legendTop = 104.0
        let (legend, legendHeight) = renderLegend(width: width, top: legendTop)
        let panelsTop = legendTop + legendHeight + 8
        let height = panelsTop + Double(rows) * Self.panelHeight + Self.margin

        var svg = [
            #"<?xml version="1.0" encoding="UTF-8"?>"#,
            openTag(
                "svg",
                [
                    "xmlns": "http://www.w3.org/2000/svg", "version": "1.1",
                    "width": coordinate(width), "height": coordinate(height),
                    "viewBox": "0 0 \(coordinate(width)) \(coordinate(height))",
                    "font-family": "sans-serif", "font-size": "11", "fill": "#333333",
                ]),
            "<title>\(escaped(report.metadata.title))</title>",
            tag("rect", ["width": coordinate(width), "height": coordinate(height), "fill": "#ffffff"]),
        ]
        svg += renderHeader(width: width)
        svg += legend
        for (index, destination) in destinations.enumerated() {
            svg += renderDestinationPanel(destination, at: panelOrigin(index, columns: columns, top: panelsTop))
        }
        svg += renderEverywherePanel(at: panelOrigin(destinations.count, columns: columns, top: panelsTop))
        svg.append("</svg>")
        return svg.joined(separator: "\n") + "\n"
    }

    private func panelOrigin(_ index: Int, columns: Int, top: Double) -> (x: Double, y: Double) {
        (Self.margin + Double(index % columns) * Self.panelWidth, top + Double(index / columns) * Self.panelHeight)
    }

    private func renderHeader(width: Double) -> [String] {
        let everywhere = report.everywhere
        let headline = "visible everywhere: p50 \(milliseconds(everywhere.p50)) · p99 \(milliseconds(everywhere.p99))"
            + " · max \(milliseconds(everywhere.max)) — \(report.missingWrites) of \(report.writeCount) writes"
            + " never reached every node"
        // Monospace at 10 px is about 6 px a character; cut the command line rather than let the viewport clip it.
        let commandCharacters = Int((width - 2 * Self.margin) / 6)
        var command = report.metadata.commandLine
        if command.count > commandCharacters { command = String(command.prefix(commandCharacters - 1)) + "…" }
        let x = coordinate(Self.margin)
        return [
            tag("text", ["x": x, "y": "30", "font-size": "17", "font-weight": "bold"], text: report.metadata.title),
            tag("text", ["x": x, "y": "52", "font-size": "12"], text: report.summaryLine),
            tag("text", ["x": x, "y": "70", "font-size": "12"], text: headline),
            tag(
                "text", ["x": x, "y": "88", "font-size": "10", "font-family": "monospace", "fill": "#666666"],
                text: command),
        ]
    }

    private func milliseconds(_ value: LatencyReport.Value) -> String {
        if case .milliseconds = value { LatencyReport.format(value) + " ms" } else { LatencyReport.format(value) }
    }

    /// Legend entries wrap onto as many rows as the width needs.
    private func renderLegend(width: Double, top: Double) -> (svg: [String], height: Double) {
        var entries = origins.enumerated().map { (label: "from \($1)", colour: colour($0), dashed: false) }
        entries.append((label: "visible everywhere", colour: Self.everywhereColour, dashed: false))
        if report.maxOneWayMilliseconds != nil {
            entries.append((label: "configured one-way delay (floor)", colour: "#666666", dashed: true))
        }
        let rowHeight = 18.0
        var svg = [openTag("g", ["class": "legend"])]
        var x = Self.margin, y = top + 10
        for entry in entries {
            let entryWidth = 28 + Double(entry.label.count) * Self.characterWidth + 18
            if x + entryWidth > width - Self.margin, x > Self.margin {
                x = Self.margin
                y += rowHeight
            }
            svg.append(
                tag(
                    "line",
                    [
                        "x1": coordinate(x), "y1": coordinate(y), "x2": coordinate(x + 22), "y2": coordinate(y),
                        "stroke": entry.colour, "stroke-width": "2.5",
                        "stroke-dasharray": entry.dashed ? "5 4" : "none",
                    ]))
            svg.append(tag("text", ["x": coordinate(x + 28), "y": coordinate(y + 4)], text: entry.label))
            x += entryWidth
        }
        svg.append("</g>")
        return (svg, y - top + rowHeight)
    }

    private func colour(_ originIndex: Int) -> String { Self.palette[originIndex % Self.palette.count] }

    private func renderDestinationPanel(_ destination: String, at origin: (x: Double, y: Double)) -> [String] {
        let pairs = report.pairs.filter { $0.to == destination }
        var svg = panelFrame(title: "seen in \(destination)", yLabel: "fraction of deliveries", at: origin)
        for pair in pairs {
            guard let floor = pair.floorMilliseconds else { continue }
            svg.append(
                verticalLine(
                    at: floor, className: "floor", colour: colour(origins.firstIndex(of: pair.from)!),
                    title: "\(pair.from) → \(pair.to) floor \(LatencyReport.formatMilliseconds(floor)) ms"))
        }
        for pair in pairs {
            let title = "\(pair.from) → \(pair.to): \(statistics(pair.latency))"
            if let curve = curve(pair.latency, colour: colour(origins.firstIndex(of: pair.from)!), title: title) {
                svg.append(curve)
            }
        }
        svg.append("</g>")
        return svg
    }

    private func renderEverywherePanel(at origin: (x: Double, y: Double)) -> [String] {
        var svg = panelFrame(title: "visible everywhere", yLabel: "fraction of writes", at: origin)
        if let maxOneWay = report.maxOneWayMilliseconds {
            svg.append(
                verticalLine(
                    at: maxOneWay, className: "max-one-way", colour: "#666666",
                    title: "largest one-way delay \(LatencyReport.formatMilliseconds(maxOneWay)) ms"))
        }
        let title = "visible everywhere: \(statistics(report.everywhere))"
        if let curve = curve(report.everywhere, colour: Self.everywhereColour, title: title) {
            svg.append(curve)
        }
        svg.append("</g>")
        return svg
    }

    private func statistics(_ distribution: LatencyReport.Distribution) -> String {
        "n \(distribution.count), p50 \(milliseconds(distribution.p50)), p99 \(milliseconds(distribution.p99)), "
            + "max \(milliseconds(distribution.max)), missing \(distribution.missing)"
    }

    /// Opens the panel's `<g>`, which the caller closes after drawing into it: title, grid, ticks and axis labels.
    private func panelFrame(title: String, yLabel: String, at origin: (x: Double, y: Double)) -> [String] {
        let left = Self.plotLeft, top = Self.plotTop, right = left + Self.plotWidth, bottom = top + Self.plotHeight
        let gridColour = "#eeeeee"
        var svg = [
            openTag("g", ["class": "panel", "transform": "translate(\(coordinate(origin.x)),\(coordinate(origin.y)))"]),
            tag("text", ["x": coordinate(left), "y": "16", "font-size": "13", "font-weight": "bold"], text: title),
        ]
        for tick in 0...Int((xUpper / xStep).rounded()) {
            let value = Double(tick) * xStep
            let x = coordinate(xPosition(value))
            svg.append(
                tag("line", ["x1": x, "y1": coordinate(top), "x2": x, "y2": coordinate(bottom), "stroke": gridColour]))
            svg.append(
                tag(
                    "text", ["x": x, "y": coordinate(bottom + 14), "text-anchor": "middle"],
                    text: LatencyReport.formatNumber(value)))
        }
        for quarter in 0...4 {
            let fraction = Double(quarter) / 4
            let y = yPosition(fraction)
            svg.append(
                tag(
                    "line",
                    [
                        "x1": coordinate(left), "y1": coordinate(y), "x2": coordinate(right), "y2": coordinate(y),
                        "stroke": gridColour,
                    ]))
            svg.append(
                tag(
                    "text", ["x": coordinate(left - 6), "y": coordinate(y + 4), "text-anchor": "end"],
                    text: LatencyReport.formatNumber(fraction)))
        }
        svg.append(
            tag(
                "rect",
                [
                    "x": coordinate(left), "y": coordinate(top), "width": coordinate(Self.plotWidth),
                    "height": coordinate(Self.plotHeight), "fill": "none", "stroke": "#999999",
                ]))
        svg.append(
            tag(
                "text",
                ["x": coordinate(left + Self.plotWidth / 2), "y": coordinate(bottom + 32), "text-anchor": "middle"],
                text: "milliseconds"))
        let yLabelX = coordinate(left - 38), yLabelY = coordinate(top + Self.plotHeight / 2)
        svg.append(
            tag(
                "text",
                [
                    "x": yLabelX, "y": yLabelY, "text-anchor": "middle",
                    "transform": "rotate(-90 \(yLabelX) \(yLabelY))",
                ],
                text: yLabel))
        return svg
    }

    private func verticalLine(at milliseconds: Double, className: String, colour: String, title: String) -> String {
        let x = coordinate(xPosition(milliseconds))
        return tag(
            "line",
            [
                "class": className, "x1": x, "y1": coordinate(Self.plotTop), "x2": x,
                "y2": coordinate(Self.plotTop + Self.plotHeight), "stroke": colour, "stroke-width": "1.5",
                "stroke-dasharray": "5 4",
            ],
            content: "<title>\(escaped(title))</title>")
    }

    /// A step path: from the first latency at 0, up at each sampled rank, then flat to the right edge, where a
    /// curve below 1 shows the missing deliveries. Move, then one horizontal and one vertical point per step,
    /// then the final horizontal: 2·steps + 2 points.
    private func curve(_ distribution: LatencyReport.Distribution, colour: String, title: String) -> String? {
        let points = Self.cdfPoints(distribution, maximumSteps: (Self.maximumPointsPerCurve - 2) / 2)
        guard let first = points.first else { return nil }
        var path = "M\(coordinate(xPosition(first.x))) \(coordinate(yPosition(0)))"
        for point in points { path += "H\(coordinate(xPosition(point.x)))V\(coordinate(yPosition(point.y)))" }
        path += "H\(coordinate(xPosition(xUpper)))"
        return tag(
            "path",
            [
                "class": "cdf", "d": path, "fill": "none", "stroke": colour, "stroke-width": "1.8",
                "stroke-linejoin": "round",
            ],
            content: "<title>\(escaped(title))</title>")
    }

    private func xPosition(_ milliseconds: Double) -> Double {
        Self.plotLeft + min(max(milliseconds / xUpper, 0), 1) * Self.plotWidth
    }

    private func yPosition(_ fraction: Double) -> Double { Self.plotTop + (1 - fraction) * Self.plotHeight }

    // MARK: XML

    /// `<name attributes…>` with the values escaped; the caller closes it.
    private func openTag(_ name: String, _ attributes: KeyValuePairs<String, String>) -> String {
        "<\(name)\(attributes.map { " \($0.key)=\"\(escaped($0.value))\"" }.joined())>"
    }

    /// A whole element holding escaped `text`.
    private func tag(_ name: String, _ attributes: KeyValuePairs<String, String>, text: String) -> String {
        tag(name, attributes, content: escaped(text))
    }

    /// A whole element; `content` is markup, already escaped. Without content the element is self-closing.
    private func tag(_ name: String, _ attributes: KeyValuePairs<String, String>, content: String? = nil) -> String {
        let open = openTag(name, attributes)
        guard let content else { return String(open.dropLast()) + "/>" }
        return open + content + "</\(name)>"
    }

    /// Coordinates to a tenth of a pixel, which no screen shows, keep the file small.
    private func coordinate(_ value: Double) -> String { LatencyReport.formatNumber((value * 10).rounded() / 10) }

    /// Escapes XML's five special characters and drops the control characters XML 1.0 cannot carry at all.
    private func escaped(_ text: String) -> String {
        var result = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            case "'": result += "&apos;"
            case "\t", "\n", "\r": result.unicodeScalars.append(scalar)
            case _ where scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF: continue
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}
