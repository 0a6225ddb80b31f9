'use strict';
// Built by `node-gyp rebuild` when npm installs this package (an optional dependency of the project).
module.exports = require('./build/Release/file_advice.node');
