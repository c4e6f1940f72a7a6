"""Paper reproduction experiments (Lemma 4.1, Fig. 2, Tables 1-2)."""
