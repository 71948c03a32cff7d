"""cg: CodeGemma in the terminal. The library API is in cg.complete (complete, generate);
the version is the installed package's (`cg --version`)."""
