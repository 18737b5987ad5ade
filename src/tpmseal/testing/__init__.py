# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers for tests and benchmarks; not used by the unlock path."""
