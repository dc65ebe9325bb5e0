// Benchmarks that drive whole clusters of real `patina agent` processes:
// the WAN emulator (WAN/), `patina bench regions` (Regions/), `patina bench live`
// (Live/) and the latency report they share (Report/).
