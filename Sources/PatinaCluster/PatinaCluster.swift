// Cluster layer: membership (SWIM), broadcast and anti-entropy sync; pure state machines plus actor shells.
