// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;
}

interface IVaults {
    function vaultOf(address node) external view returns (address);
}

/// @title Prepaid balances: a payer deposits for a payee (an inference node's payment vault) into a
/// channel, authorizes spending with gasless EIP-712 *cumulative* vouchers, and the payee redeems
/// what it is owed for many requests in one transaction.
/// @dev Shaped like x402's batch settlement: deposit, voucher, claim, refund. A voucher is a
/// ceiling, not a bill: a call charged per token is authorized for its maximum and the payee claims
/// only what it charged, so only the payee (or the node whose payment vault it is) may claim. The
/// payer's unspent rest leaves only `withdrawDelay` seconds after a withdrawal request, which gives
/// the payee time to redeem. A channel is (payer, payee, salt); its claims only ever grow.
contract Escrow is EIP712, ReentrancyGuard {
    using SafeERC20 for IERC20;

    struct Channel {
        uint256 deposited;
        uint256 claimed;
        uint64 withdrawableAt;
    }

    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address payer,address payee,bytes32 salt,uint256 cumulativeAmount,bytes32 nonce)");

    IERC20 public immutable token;
    uint64 public immutable withdrawDelay;
    /// Where each node's payment vault is (the settlement contract).
    IVaults public immutable vaults;

    mapping(bytes32 channelId => Channel) private _channels;

    error ZeroAmount();
    error NotPayee(address caller, address payee);
    error OverVoucher(uint256 amount, uint256 cumulativeAmount);
    error VoucherNotIncreasing(uint256 amount, uint256 claimed);
    error InsufficientDeposit(uint256 cumulativeAmount, uint256 deposited);
    error InvalidVoucherSignature();
    error WithdrawalNotRequested();
    error WithdrawalDelayNotOver(uint64 withdrawableAt);
    error NothingToWithdraw();

    event Deposited(bytes32 indexed channel, address indexed payer, address indexed payee, bytes32 salt, uint256 amount);
    event Redeemed(bytes32 indexed channel, address indexed payee, uint256 claimed, uint256 paid);
    event WithdrawalRequested(bytes32 indexed channel, address indexed payer, uint64 withdrawableAt);
    event Withdrawn(bytes32 indexed channel, address indexed payer, uint256 amount);

    constructor(IERC20 token_, uint64 withdrawDelay_, IVaults vaults_) EIP712("Cairn Escrow", "1") {
        token = token_;
        withdrawDelay = withdrawDelay_;
        vaults = vaults_;
    }

    function channelId(address payer, address payee, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(payer, payee, salt));
    }

    /// @notice Adds `amount` (approve first) to the caller's channel with `payee`. A deposit cancels
    /// a pending withdrawal request.
    function deposit(address payee, bytes32 salt, uint256 amount) external nonReentrant {
        bytes32 id = _credit(msg.sender, payee, salt, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(id, msg.sender, payee, salt, amount);
    }

    /// @notice Deposits with an EIP-3009 `ReceiveWithAuthorization` signed by `payer` (to this
    /// contract), so the payer needs no approve transaction and no gas. The authorization's nonce
    /// must be `depositNonce(channelId(payer, payee, salt), entropy)`: the payer's signature then
    /// covers the channel too, so whoever submits it cannot send the deposit to another payee.
    function depositWithAuthorization(
        address payer,
        address payee,
        bytes32 salt,
        uint256 amount,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 entropy,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        bytes32 id = _credit(payer, payee, salt, amount);
        IERC3009Receive(address(token)).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, depositNonce(id, entropy), v, r, s
        );
        emit Deposited(id, payer, payee, salt, amount);
    }

    /// @notice Raises what the channel has paid the payee to `amount` (at most `cumulativeAmount`, the
    /// ceiling the payer signed) and pays the difference. Only the payee, or the node whose payment
    /// vault the payee is, may claim: anyone else holding a voucher could charge its whole ceiling.
    /// A voucher's `nonce` (the payer's random choice) makes every voucher a payer signs distinct,
    /// even two with the same ceiling, so the payee can tell a new one from a replayed one.
    function redeem(
        address payer,
        address payee,
        bytes32 salt,
        uint256 cumulativeAmount,
        bytes32 nonce,
        uint256 amount,
        bytes calldata signature
    ) external nonReentrant returns (uint256 paid) {
        if (msg.sender != payee && vaults.vaultOf(msg.sender) != payee) revert NotPayee(msg.sender, payee);
        if (amount > cumulativeAmount) revert OverVoucher(amount, cumulativeAmount);
        bytes32 id = channelId(payer, payee, salt);
        Channel storage c = _channels[id];
        if (amount <= c.claimed) revert VoucherNotIncreasing(amount, c.claimed);
        if (amount > c.deposited) revert InsufficientDeposit(amount, c.deposited);
        if (!SignatureChecker.isValidSignatureNow(payer, voucherDigest(payer, payee, salt, cumulativeAmount, nonce), signature)) {
            revert InvalidVoucherSignature();
        }
        paid = amount - c.claimed;
        c.claimed = amount;
        emit Redeemed(id, payee, amount, paid);
        token.safeTransfer(payee, paid);
    }

    /// @notice Starts the delay after which the caller can take back what the payee has not redeemed.
    function requestWithdrawal(address payee, bytes32 salt) external {
        bytes32 id = channelId(msg.sender, payee, salt);
        Channel storage c = _channels[id];
        if (c.deposited == c.claimed) revert NothingToWithdraw();
        c.withdrawableAt = uint64(block.timestamp) + withdrawDelay;
        emit WithdrawalRequested(id, msg.sender, c.withdrawableAt);
    }

    /// @notice After the delay, refunds the unredeemed rest to the caller. Vouchers up to what was
    /// redeemed stay spent; later vouchers fail for lack of deposit.
    function withdraw(address payee, bytes32 salt) external nonReentrant returns (uint256 amount) {
        bytes32 id = channelId(msg.sender, payee, salt);
        Channel storage c = _channels[id];
        if (c.withdrawableAt == 0) revert WithdrawalNotRequested();
        if (block.timestamp < c.withdrawableAt) revert WithdrawalDelayNotOver(c.withdrawableAt);
        amount = c.deposited - c.claimed;
        if (amount == 0) revert NothingToWithdraw();
        c.deposited = c.claimed;
        c.withdrawableAt = 0;
        emit Withdrawn(id, msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice The EIP-3009 nonce a payer signs to deposit into channel `id`.
    function depositNonce(bytes32 id, bytes32 entropy) public pure returns (bytes32) {
        return keccak256(abi.encode(id, entropy));
    }

    function getChannel(address payer, address payee, bytes32 salt) external view returns (Channel memory) {
        return _channels[channelId(payer, payee, salt)];
    }

    function voucherDigest(address payer, address payee, bytes32 salt, uint256 cumulativeAmount, bytes32 nonce)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, payer, payee, salt, cumulativeAmount, nonce)));
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _credit(address payer, address payee, bytes32 salt, uint256 amount) private returns (bytes32 id) {
        if (amount == 0) revert ZeroAmount();
        id = channelId(payer, payee, salt);
        Channel storage c = _channels[id];
        c.deposited += amount;
        c.withdrawableAt = 0;
    }
}
