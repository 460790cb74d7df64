"""The store: the engine, the models and their SQL, group commit, checkpoints, the migrations runner."""
