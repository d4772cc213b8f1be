"""The library's version and the version of what its protection computes (imports nothing).

Modules that record versions (work dirs, saved transforms, dataset cards) import them from here, not
from the package root, whose lazy names import those modules.
"""

__version__ = "0.1.0"

#: Version of what the protection computes. Bump it whenever a change alters the noise, triggers or
#: surrogate that `protect` produces for the same inputs (not for refactors that keep them
#: bit-identical): a work dir remembers the value it was computed with, so a rerun after such an
#: upgrade never reuses state computed by the old algorithm.
#: 1: first release. 2: the surrogate's contrastive loss is computed in float32 under mixed
#: precision (one CLIP training step shared with the victim). 3: PGD draws a new caption permutation
#: at every step; EM pairs each image with its own caption. 4: triggers are dictionary words on no
#: blocklist by default (``MEMConfig.trigger_words``). 5: the work dir stores where each caption takes
#: its trigger (``MEMConfig.trigger_position``; "start" computes what 4 did, but v4 work dirs lack the
#: array). 6: a "random" slot is drawn only among the word boundaries inside the text context (a
#: caption longer than the context could put its trigger past what a truncating victim reads);
#: "start", and captions that fit the context, compute what 5 did. 7: the default method is the
#: layered one (``MEMConfig.method``; "mem" computes what 6 did). 8: ``trigger_words="dictionary"``
#: draws from the shipped list of neutral everyday words (``data/trigger_words.txt``) and blocklists
#: match inflections ("any" without a blocklist computes what 7 did); a protector saved before
#: protects the rows it was not fitted on with the new list.
ALGORITHM_VERSION = 8
