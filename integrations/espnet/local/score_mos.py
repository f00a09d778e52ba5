#!/usr/bin/env python3
"""Python side of local/score_mos.sh: split a wav.scp, score one part, merge the parts.

    score_mos.py split --nj N <wav.scp> <dir>
    score_mos.py score [--config score.yaml] [--ngpu 0|1] [--job J] [--model NAME] ... <wav.J.scp> <utt2pmos.J>
    score_mos.py merge [--model NAME] [--expected wav.scp] <outdir> <utt2pmos.1> ...

Everything is in torchmos.adapters.espnet_scp (pip install 'torchmos[espnet]'); this
file only makes the stage self-contained when copied into a recipe's local/.
"""

import sys

from torchmos.adapters.espnet_scp import main

if __name__ == "__main__":
    sys.exit(main())
