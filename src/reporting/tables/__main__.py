from src.reporting.tables.cli import main

main()
