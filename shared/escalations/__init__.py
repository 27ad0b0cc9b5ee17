"""The cloud->model-kit contract: the escalation records the cloud writes and the learning loop reads."""
