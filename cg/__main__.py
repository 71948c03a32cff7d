from cg.entry import run

run()
