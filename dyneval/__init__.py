"""dyneval: a reproduction bundle for the Parameter Golf run "Dynamic Eval + TTT".

Pipeline order: config -> data / corpus -> model -> optim -> train -> quant -> evaluate -> adapt ->
report, with distributed holding every collective and parity checking the numerics against a
reference fixture. Importing the package has no side effects.
"""

__version__ = "0.1.0"
