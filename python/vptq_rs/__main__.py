"""``python -m vptq_rs``: the ``vptq-rs`` command line without the installed script."""

from vptq_rs.cli import main

main()
