"""`cg eval`: HumanEval infilling (single-line and multi-line), scored in a sandboxed subprocess."""
