"""Online learners over discrete arms (the k of k-LPM): ``select(context) -> arm``, ``update(arm, reward, context)``.

Hand-written rather than taken from MABWiser or similar: those libraries assume stationary rewards, keep no
JSON-safe state and do not let arms come and go mid-run, while schedctl's load changes under the learner and a
restarted sidecar must keep what it learned. See ``base.py`` for the protocol and the state format.

Learners (factory names): ``ucb1``, ``sliding_window_ucb``, ``discounted_ucb``, ``thompson_beta``,
``thompson_gaussian``, ``discounted_thompson_beta``, ``discounted_thompson_gaussian``, ``exp3``, ``linucb``
(context: a numeric vector) and ``contextual`` (one discrete learner per load bucket; context: load features).
Depends on nothing else in schedctl.
"""

from schedctl.bandits.base import (
    Arm,
    Bandit,
    BanditConfigError,
    DiscreteBandit,
    LearnerParams,
    decode_arm,
    encode_arm,
)
from schedctl.bandits.context import (
    BucketerParams,
    ContextualBandit,
    ContextualParams,
    LoadBucketer,
    LoadFeatures,
)
from schedctl.bandits.exp3 import EXP3, EXP3Params, exp3_gamma_for_horizon
from schedctl.bandits.factory import LEARNERS, bandit_from_state, make_bandit, names, params_model
from schedctl.bandits.linucb import LinUCB, LinUCBParams
from schedctl.bandits.thompson import (
    DiscountedThompsonBeta,
    DiscountedThompsonBetaParams,
    DiscountedThompsonGaussian,
    DiscountedThompsonGaussianParams,
    ThompsonBeta,
    ThompsonBetaParams,
    ThompsonGaussian,
    ThompsonGaussianParams,
)
from schedctl.bandits.ucb import (
    UCB1,
    DiscountedUCB,
    DiscountedUCBParams,
    SlidingWindowUCB,
    SlidingWindowUCBParams,
    UCB1Params,
)

__all__ = [
    "EXP3",
    "LEARNERS",
    "UCB1",
    "Arm",
    "Bandit",
    "BanditConfigError",
    "BucketerParams",
    "ContextualBandit",
    "ContextualParams",
    "DiscountedThompsonBeta",
    "DiscountedThompsonBetaParams",
    "DiscountedThompsonGaussian",
    "DiscountedThompsonGaussianParams",
    "DiscountedUCB",
    "DiscountedUCBParams",
    "DiscreteBandit",
    "EXP3Params",
    "LearnerParams",
    "LinUCB",
    "LinUCBParams",
    "LoadBucketer",
    "LoadFeatures",
    "SlidingWindowUCB",
    "SlidingWindowUCBParams",
    "ThompsonBeta",
    "ThompsonBetaParams",
    "ThompsonGaussian",
    "ThompsonGaussianParams",
    "UCB1Params",
    "bandit_from_state",
    "decode_arm",
    "encode_arm",
    "exp3_gamma_for_horizon",
    "make_bandit",
    "names",
    "params_model",
]
