#!/usr/bin/env python3
"""Python side of local/score_mos.sh: split a wav.scp, score one part, merge the parts.

    score_mos.py split --nj N <wav.scp> <dir>
    score_mos.py score [--model NAME] [--reference ref.scp] <wav.JOB.scp> <utt2mos.JOB>
    score_mos.py merge [--model NAME] [--expected wav.scp] <outdir> <utt2mos.1> ...

Everything is in torchmos.adapters.espnet (pip install 'torchmos[integrations]'); this
file only makes the stage self-contained when copied into a recipe's local/.
"""

import sys

from torchmos.adapters.espnet import main

if __name__ == "__main__":
    sys.exit(main())
