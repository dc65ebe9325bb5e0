import PatinaStore

/// Wiring of a node's layers; grows as the transport and cluster land.
public enum PatinaNode {
    public static let version = "0.1.0"
}
