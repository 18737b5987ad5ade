# SPDX-License-Identifier: LGPL-2.1-or-later
"""Our software policy digests equal what the TPM computes in a trial session."""

from __future__ import annotations

import pytest
from support import Swtpm

from tpmseal.tpm.device import open_tpm
from tpmseal.tpm.pcrs import parse_pcrs
from tpmseal.tpm.policy import marshal_pcr_selection, policy_digest
from tpmseal.unlock import read_pcrs

pytestmark = pytest.mark.tpm


@pytest.mark.parametrize(("pcrs", "pin"), [("7", False), ("0+2+4+7", True), ("7+11+23", False), ("", True)])
def test_software_policy_digest_matches_tpm_trial_session(swtpm: Swtpm, no_leaks: None, pcrs: str, pin: bool) -> None:
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPML_PCR_SELECTION, TPMT_SYM_DEF

    sel = parse_pcrs(pcrs)
    with open_tpm(swtpm.tcti) as esapi:
        full = sel.with_values(read_pcrs(esapi, sel))
        session = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
        )
        try:
            if sel.pcrs:
                spec, _ = TPML_PCR_SELECTION.unmarshal(marshal_pcr_selection(sel.bank, sel.indexes))
                esapi.policy_pcr(session, b"", spec)
            if pin:
                esapi.policy_auth_value(session)
            tpm_digest = bytes(esapi.policy_get_digest(session))
        finally:
            esapi.flush_context(session)
    assert policy_digest(full, pin) == tpm_digest


def test_read_pcrs_reads_more_than_eight_at_once(swtpm: Swtpm) -> None:
    sel = parse_pcrs("+".join(str(i) for i in range(24)))
    with open_tpm(swtpm.tcti) as esapi:
        values = read_pcrs(esapi, sel)
    assert sorted(values) == list(range(24)) and values[7] == swtpm.pcr(7)
