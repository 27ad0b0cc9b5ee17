"""The fleet manager: rollout state machine, persistence, MQTT publisher and REST API."""
