# SPDX-License-Identifier: Apache-2.0
"""data_tools: turn robot bags and annotation exports into a training dataset (``mtl-data``)."""
