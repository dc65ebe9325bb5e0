// HTTP API (Corrosion-compatible shapes).
