"""The paper's nets and solvers: one template, the committed set, and the
copies a run derives (its LMDBs, input size, iterations and seed)."""
