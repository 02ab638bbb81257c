# SPDX-License-Identifier: Apache-2.0
"""``make demo``: the whole pipeline on the built-in synthetic bag, and its HTML report."""
