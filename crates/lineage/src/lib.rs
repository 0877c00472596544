//! eventyard lineage: causal graph of a run from its envelopes, and renderers.
