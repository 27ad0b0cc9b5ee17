"""The device<->fleet MQTT link: topics and messages, signed commands, the broker connection."""
