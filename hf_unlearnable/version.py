"""The library's version and the version of what its protection computes (imports nothing).

Modules that record versions (work dirs, saved transforms, dataset cards) import them from here, not
from the package root, whose lazy names import those modules.
"""

__version__ = "0.1.0"

#: Version of what the protection computes. It changes whenever an upgrade makes `protect` produce
#: other noise, triggers or surrogate for the same inputs: a work dir records the version it was
#: computed with, and a work dir of another version is refused, never reused. What each
#: version changed: docs/architecture.md, "Algorithm versions".
ALGORITHM_VERSION = 8
