"""The edge<->cloud reasoner contract: session objects, the protobuf<->domain wire, the feature codec."""
