"""Stage synth_feedback@<method>: one row of the feedback ladder (Askari-Hemmat et al.) into
data/synthetic/<method>/, from the dual-conditioned generator (models/generator_unclip) and, for
feedback_*, the baseline classifier's feedback (models/classifier). Resumable and sharded like synth.
"""

import sys

from _feedback import generate_ladder_set, ladder_settings
from _not_applicable import skip_if_not_applicable, synthetic_outs

from tailsynth.methods import registry

from _common import load_params, stage


@stage
def main(method: str) -> None:
    params = load_params()
    m = registry.get(method, registry.LONG_TAIL, registry.FEEDBACK)
    if skip_if_not_applicable(params, synthetic_outs(m, registry.LONG_TAIL), family=m.family):
        return
    generate_ladder_set(params, m, ladder_settings(params["feedback"], m))


if __name__ == "__main__":
    main(sys.argv[1])
