from zeroshot.cli import main

main()
