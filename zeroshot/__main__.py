from zeroshot.cli import run

run()
