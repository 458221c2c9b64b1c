"""Models for slimcc: the seeded test zoo (`zoo`), real models from PyPI wheels (`fetch`),
and real images/digits for calibration and agreement checks (`data`)."""
