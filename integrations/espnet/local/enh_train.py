#!/usr/bin/env python3
"""ESPnet enhancement training with predicted MOS as a validation metric.

Same command line as ``python -m espnet2.bin.enh_train`` (or, with ``--task enh_tse``
first, ``espnet2.bin.enh_tse_train``); it only registers torchmos' ``MOSCriterion`` as
the criterion ``torchmos_mos`` first, so a training config can list

    criterions:
      - name: torchmos_mos
        conf: {model: distillmos, fs: 16000}
        wrapper: fixed_order
        wrapper_conf: {weight: 0.0}

and ``best_model_criterion: [[valid, mos, max]]`` can keep the checkpoints with the best
MOS. enh.sh reaches it, unedited, through ``--python local/torchmos_python.sh``.

The registration runs when this file is loaded, not only under ``__main__``: with
``--ngpu 2`` or more, ESPnet starts one process per GPU, and each one loads this file
again (as ``__mp_main__``) before it builds its model.
"""

import sys

from torchmos.adapters.espnet import register_criterion

register_criterion()


def main(cmd=None):
    cmd = list(sys.argv[1:] if cmd is None else cmd)
    task = "enh"
    if cmd[:1] == ["--task"]:
        task, cmd = cmd[1], cmd[2:]
    if task == "enh":
        from espnet2.tasks.enh import EnhancementTask as Task
    elif task == "enh_tse":
        from espnet2.tasks.enh_tse import TargetSpeakerExtractionTask as Task
    else:
        raise SystemExit(f"enh_train.py: --task must be enh or enh_tse, got {task!r}")
    Task.main(cmd=cmd)


if __name__ == "__main__":
    main()
