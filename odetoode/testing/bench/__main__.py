"""``python -m odetoode.testing.bench MODEL_FILE --serve policy oip rest``: a floor server (see ``floor``)."""

from odetoode.testing.bench.floor import main

main()
