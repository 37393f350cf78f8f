"""The Lightning side of the suite: backbone loading, the data module, the LightningModule, the profilers, the
linear probe and one sweep cell (build, train, score). It imports the adapter library and `data_prep`, never the
sweep that drives it."""
