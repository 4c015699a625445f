"""The gRPC layer: servicers convert proto <-> domain and map errors; nothing else here."""
