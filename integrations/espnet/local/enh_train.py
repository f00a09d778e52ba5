#!/usr/bin/env python3
"""ESPnet enhancement training with predicted MOS as a validation metric.

Same command line as ``python -m espnet2.bin.enh_train``; it only registers torchmos'
``MOSCriterion`` as the criterion ``torchmos_mos`` first, so a training config can list

    criterions:
      - name: torchmos_mos
        conf: {model: distillmos, fs: 16000}
        wrapper: fixed_order
        wrapper_conf: {weight: 0.0}

and ``--best_model_criterion valid mos max`` can keep the checkpoints with the best MOS.
In enh.sh, call this file where it calls ``-m espnet2.bin.enh_train``.
"""

from espnet2.tasks.enh import EnhancementTask, criterion_choices

from torchmos.adapters.espnet import MOSCriterion

criterion_choices.classes["torchmos_mos"] = MOSCriterion


def main(cmd=None):
    EnhancementTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
