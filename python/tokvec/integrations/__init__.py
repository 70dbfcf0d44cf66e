"""Adapters for other libraries' interfaces, one module each (`tokvec.integrations.langchain`).

Each module imports its library at the top, so it needs that library's extra (`pip install
'tokvec[langchain]'`); `import tokvec` imports none of them.
"""
