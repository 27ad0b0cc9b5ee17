"""The learning loop (`models improve`): training sets from escalations, the pair, the gate and its evidence."""
