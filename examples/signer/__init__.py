"""The wallet signer: signs only what a valid ACTION_WAAS_SIGN token allows."""

from examples.signer.signer import Signer, SigningRefused

__all__ = ["Signer", "SigningRefused"]
