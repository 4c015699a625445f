"""The wallet signer: signs only what a valid ACTION_WAAS_SIGN token allows."""

from examples.signer.approval import (
    ApprovalNotVerified,
    VerifiedApproval,
    check_passkey_approval,
    check_token_approval,
    token_claims,
)
from examples.signer.signer import Signer, SigningRefused

__all__ = [
    "ApprovalNotVerified",
    "Signer",
    "SigningRefused",
    "VerifiedApproval",
    "check_passkey_approval",
    "check_token_approval",
    "token_claims",
]
