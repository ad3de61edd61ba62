SP=
