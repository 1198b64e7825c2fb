from kdscope.cli import main

main()
