"""Generated stubs of package `odetoode.v1` (by `make proto`; do not edit)."""
